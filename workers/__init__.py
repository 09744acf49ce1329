"""What runs on a host: drivers, disk backends, the QMP client, the subprocess runner."""
