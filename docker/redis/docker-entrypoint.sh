#!/bin/sh
# Mirrors the official Redis image: `docker run IMAGE --port 6380 ...` runs redis-server with
# those arguments, `docker run IMAGE redis-server ...` or any other command (redis-cli) as given.
set -e
if [ "${1#-}" != "$1" ]; then
    set -- redis-server "$@"
fi
exec "$@"
