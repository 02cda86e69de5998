#!/bin/sh
# Writes the broker's configuration, makes the accounts file with the orchestrator's admin account on the
# first start, then runs Mosquitto. MOSQUITTO_ADMIN_USERNAME and MOSQUITTO_ADMIN_PASSWORD are required.
set -eu
: "${MOSQUITTO_ADMIN_USERNAME:?set MOSQUITTO_ADMIN_USERNAME (the orchestrator's ORCH_BROKER__USERNAME)}"
: "${MOSQUITTO_ADMIN_PASSWORD:?set MOSQUITTO_ADMIN_PASSWORD (the orchestrator's ORCH_BROKER__PASSWORD)}"
DATA=/var/lib/mosquitto
ACCOUNTS="$DATA/dynamic-security.json"
if [ ! -f "$ACCOUNTS" ]; then
  mosquitto_ctrl dynsec init "$ACCOUNTS" "$MOSQUITTO_ADMIN_USERNAME" "$MOSQUITTO_ADMIN_PASSWORD" >/dev/null
fi
CONFIG="$DATA/mosquitto.conf"
cat > "$CONFIG" <<CONF
per_listener_settings false
allow_anonymous false
plugin /usr/lib/mosquitto_dynamic_security.so
plugin_opt_config_file $ACCOUNTS
listener ${MOSQUITTO_PORT:-1883} ${MOSQUITTO_BIND_ADDRESS:-}
persistence true
persistence_location $DATA/
autosave_interval 10
max_queued_messages 1000000
max_inflight_messages 0
set_tcp_nodelay true
log_dest stdout
CONF
exec mosquitto -c "$CONFIG"
