"""Peer transfer over HTTP/3 (QUIC): a server for peers, a client to fetch from them."""
