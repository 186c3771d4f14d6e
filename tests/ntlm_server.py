"""An independent NTLM acceptor for tests/ntlm_independent.rs.

pyspnego's own NTLM implementation (not ours, not the system's GSSAPI) plays
the server. It reads the users it accepts from the file named by the env
var NTLM_USER_FILE (lines DOMAIN:USER:PASSWORD) and speaks a line protocol
on stdin/stdout, one line per message, base64 tokens:

    N <negotiate>      ->  C <challenge>        (starts a new context)
    A <authenticate>   ->  OK <DOMAIN\\user>    or  FAIL <reason>

A missing pyspnego makes the script print `MISSING <reason>` and exit 3.
"""

import base64
import sys

try:
    import spnego
except ImportError as e:  # pragma: no cover - reported by the Rust test
    print(f"MISSING {e}", flush=True)
    sys.exit(3)


def main() -> None:
    ctx = None
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        kind, _, token = line.partition(" ")
        try:
            if kind == "N":
                ctx = spnego.server(
                    protocol="ntlm",
                    options=spnego.NegotiateOptions.use_ntlm,
                )
                out = ctx.step(base64.b64decode(token))
                print("C " + base64.b64encode(out).decode(), flush=True)
            elif kind == "A":
                assert ctx is not None, "authenticate before negotiate"
                ctx.step(base64.b64decode(token))
                if ctx.complete:
                    print(f"OK {ctx.client_principal}", flush=True)
                else:
                    print("FAIL context not complete", flush=True)
                ctx = None
            else:
                print(f"FAIL unknown command {kind!r}", flush=True)
        except Exception as e:  # every failure is an answer, not a crash
            print(f"FAIL {type(e).__name__}: {e}".replace("\n", " "), flush=True)
            ctx = None


if __name__ == "__main__":
    main()
