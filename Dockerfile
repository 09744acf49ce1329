# domsnap: one image for the worker (qemu driver), the scheduler and the CLI.
FROM python:3.11-slim-bookworm

# QEMU 7.2 (bookworm) for the qemu driver and qemu-img for offline disk work.
RUN apt-get update \
    && apt-get install -y --no-install-recommends qemu-system-x86 qemu-utils \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . /src
RUN pip install --no-cache-dir /src

# Runs as root: QEMU needs /dev/kvm, and the default state dir is /var/lib/domsnap.
WORKDIR /var/lib/domsnap
CMD ["domsnap", "--help"]
