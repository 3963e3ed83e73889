"""clients.client.MicrophoneTrack keeps a bounded history of send times (the 30-minute soak's RSS creep, issue #12
item 9): a looping microphone hands 50 chunks/s to the encoder for as long as the session lasts."""

from __future__ import annotations

import asyncio

import numpy as np

from clients.client import MIC_CHUNK, MicrophoneTrack


def test_send_history_is_bounded_and_still_answers_for_recent_samples() -> None:
    async def main() -> MicrophoneTrack:
        mic = MicrophoneTrack(np.ones(16_000, np.int16), loop=True, history=20)
        for _ in range(50):  # real pacing: 50 x 20 ms
            frame = await mic.recv()
            assert frame.samples == MIC_CHUNK
        return mic

    mic = asyncio.run(main())
    assert len(mic.sent) == 20
    newest = mic.samples_sent - 1
    assert mic.time_of_sample(newest) == mic.sent[-1][0]
    assert mic.time_of_sample(30 * MIC_CHUNK) == mic.sent[0][0]  # the oldest chunk kept
    assert mic.time_of_sample(29 * MIC_CHUNK) is None  # forgotten
