"""Stand-ins for peers that cannot run here: `twilio` speaks Twilio's side of Media Streams."""
