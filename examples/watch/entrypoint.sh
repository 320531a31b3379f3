#!/bin/sh
# Container entry point for `dtchat watch --enforce`.
#   docker run -d --restart=unless-stopped -e DINGTALK_APP_KEY -e DINGTALK_APP_SECRET \
#     -v "$PWD/chats:/chats" dtchat-watch
# /chats is the checkout holding the YAML and its dtchat.state.json. `docker kill -s HUP` reloads it;
# `docker stop` (SIGTERM) lets the chat in progress finish and exits 0. Extra arguments are passed on
# (e.g. --format json, --budget 200).
set -eu
: "${DINGTALK_APP_KEY:?set DINGTALK_APP_KEY}"
: "${DINGTALK_APP_SECRET:?set DINGTALK_APP_SECRET}"
CHATS="${DTCHAT_CHATS:-/chats}"
if [ ! -f "$CHATS/dtchat.state.json" ]; then
  echo "no $CHATS/dtchat.state.json: mount the checkout that holds the YAML and its state file" >&2
  exit 1
fi
# exec: dtchat is PID 1's child no more, it is PID 1, so it gets SIGTERM and SIGHUP directly.
exec dtchat watch "$CHATS" --enforce "$@"
