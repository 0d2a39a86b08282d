"""Coverage-guided fuzzing of the tunnel decoder: `python fuzz_protocol.py -max_total_time=N`.

Anything but a decoded message or a ProtocolError from `gatewayd.protocol.decode` is a crash.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from gatewayd import protocol


def test_one_input(data: bytes) -> None:
    try:
        msg = protocol.decode(data)
    except protocol.ProtocolError as exc:
        assert exc.code in protocol.ProtocolError.CODES
        return
    # Whatever decodes must encode again and decode to the same message.
    assert protocol.decode(protocol.encode(msg)) == msg


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
