"""Host I/O: the subprocess runner, atomic files, sidecars and journals, path confinement."""
