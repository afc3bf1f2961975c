"""Cluster mode: daemons on many hosts coordinating through etcd."""
