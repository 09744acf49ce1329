"""Block-layer work: the QMP client and block jobs, qemu-img, LVM, block-node lookup."""
