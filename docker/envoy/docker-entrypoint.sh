#!/bin/sh
# Mirrors the official Envoy image: `docker run IMAGE -c file.yaml` runs envoy with those
# flags, `docker run IMAGE envoy ...` or any other command runs as given.
set -e
if [ "${1#-}" != "$1" ]; then
    set -- envoy "$@"
fi
exec "$@"
