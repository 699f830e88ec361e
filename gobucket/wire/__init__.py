"""The group wire protocol: length-prefixed msgpack frames over TCP."""
