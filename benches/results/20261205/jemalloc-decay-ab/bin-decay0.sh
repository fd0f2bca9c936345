#!/bin/sh
_RJEM_MALLOC_CONF=background_thread:true,dirty_decay_ms:0,muzzy_decay_ms:0 exec /tmp/bin-base "$@"
