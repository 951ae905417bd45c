"""Talk-back: the assistant's answers carried back into the call (docs/talkback.md).

In flow order: `actions` validates what a webhook answer asks for (say, play, pause, transfer,
hang up); `tts` renders the text of a `say` as speech (loaded once per process, streamed out
sentence by sentence, cached); `fetch` loads the audio of a `play` (URLs behind an SSRF guard,
or files under `media_dir`); `runner` carries out one call's actions in order through the
call's `CallMedia` and stops them when the caller barges in; `service` wires it into the app
(webhook answers, `POST /v1/calls/{id}/actions`, dialplan greetings).
"""
