"""Audio sources other than SIP, each registering its routes on the app with `setup(app)`.

`stream` serves `GET /v1/stream` (the streaming transcription protocol, wire format in
`stream_protocol`); `twilio` serves the Twilio voice webhook and media socket. All of them
start calls only through the app's `CallHub` (`app.calls`).
"""
