# Asterisk 22 from Debian sid, as the sandbox script (ari_app/sandbox.py) builds it:
# the same two packages, no recommends, and asterisk_conf/ as the whole /etc/asterisk.
FROM debian:sid-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends asterisk asterisk-core-sounds-en-gsm curl \
 && rm -rf /var/lib/apt/lists/* /etc/asterisk/* \
 && mkdir -p /run/asterisk
# asterisk_conf/ is bind-mounted at /etc/asterisk by docker-compose.yml.
CMD ["/usr/sbin/asterisk", "-f", "-n"]
