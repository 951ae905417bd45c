# Hearsay: the same install as `make run`, on python:3.11-slim.
FROM python:3.11-slim

WORKDIR /srv/hearsay
# libgomp for CTranslate2; espeak-ng for talk-back's fallback voice; kamailio in front of the
# SIP workers when HEARSAY_SIP_MAX_CALLS is above 4. Models and the default voice come from
# PyPI packages.
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 espeak-ng kamailio make \
    && rm -rf /var/lib/apt/lists/*

COPY pyproject.toml README.md Makefile ./
COPY app ./app
COPY sip ./sip
# torch==2.13.0 from plain PyPI is the large CUDA build; pass an index holding the CPU wheel
# (docker build --build-arg PIP_EXTRA_INDEX_URL=...) for a small image.
ARG PIP_EXTRA_INDEX_URL=""
RUN python -m venv .venv \
    && .venv/bin/pip install --no-cache-dir --upgrade pip \
    && PIP_EXTRA_INDEX_URL="$PIP_EXTRA_INDEX_URL" .venv/bin/pip install --no-cache-dir -e . \
    && make smart-turn
# (the end-of-turn model, out of the pipecat-ai wheel into .venv/share/hearsay: see the Makefile)

COPY settings.toml ./
COPY dialplans ./dialplans

ENV HEARSAY_HTTP_HOST=0.0.0.0
# HTTP/WebSocket, SIP, and the RTP range ([sip] rtp_port_start/rtp_port_count).
EXPOSE 8080/tcp 5060/udp 5060/tcp 10000-11999/udp
VOLUME ["/srv/hearsay/var"]
CMD [".venv/bin/python", "-m", "app", "serve", "--config", "settings.toml"]
