"""Routing: which nodes hold a key, over a libp2p Kademlia DHT."""
