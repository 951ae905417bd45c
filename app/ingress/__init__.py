"""Audio sources other than SIP: the /v1/stream WebSocket and Twilio Media Streams."""
