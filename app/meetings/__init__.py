"""Meetings: one VAD and recognizer stream per participant, results merged in time order
(`/v1/meetings`, docs/sdk.md).

    merge    finals of all participants, released in meeting-time order
    meeting  the participants, their engine streams and clocks, the summary
"""
