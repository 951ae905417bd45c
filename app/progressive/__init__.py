"""Progressive transcription of long files sent in chunks (`/v1/progressive`, docs/sdk.md).

    container  the file's bytes as they arrive, decoded by PyAV on its own thread
    job        one file: container -> the engine's stream -> segments (+ speakers, topics)
"""
