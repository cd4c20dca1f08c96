#!/usr/bin/env python3
"""End-to-end: missed ticks are coalesced. The test plugin stall.so blocks the loop on
request (`stall {"ms": N}`); the ticks an instance missed meanwhile must not come in a
burst afterwards (at most one late tick, then the normal period from then on) and are
counted in ticks_skipped (plugin list) and organism_ticks_skipped_total (metrics)."""
import os
import re

from harness import BUILD, Agent, run_tests, wait_for

STALL_SO = os.path.join(BUILD, "test", "plugins", "stall", "stall.so")
PERIOD_MS = 200
STALL_MS = 2000


def test_stall_coalesces_missed_ticks(tmp, agents):
    a = Agent(tmp, "  stall:\n    path: %s\n    interval: %dms\n" % (STALL_SO, PERIOD_MS))
    agents.append(a)
    a.start()
    wait_for(lambda: a.ok("call", "stall", "ticks")["n"] >= 3, timeout=10, what="three ticks")
    assert a.instance("stall")["ticks_skipped"] == 0
    assert a.ok("call", "stall", "stall", '{"ms": %d}' % STALL_MS) == {"stalled_ms": STALL_MS}
    # wait until the schedule has clearly resumed: two ticks after the stall
    def after():
        t = a.ok("call", "stall", "ticks")
        late = [x for x in t["at_us"] if x >= t["stall_end_us"]]
        return t if len(late) >= 3 else None
    t = wait_for(after, timeout=10, what="ticks after the stall")
    late = [x for x in t["at_us"] if x >= t["stall_end_us"]]
    # at most one tick right after the stall (the coalesced one), none in a burst
    burst = [x for x in late if x - t["stall_end_us"] < PERIOD_MS * 1000 // 2]
    assert len(burst) <= 1, (burst, t)
    # then the period again (a burst would be microseconds apart; a loaded machine only
    # delays a tick, it never brings one forward)
    gaps = [b - a_ for a_, b in zip(late, late[1:])]
    assert all(g >= PERIOD_MS * 1000 // 4 for g in gaps), (gaps, t)
    # the missed ones are counted: the periods of the stall, less the one that ran
    stalled_us = t["stall_end_us"] - t["stall_start_us"]
    assert stalled_us >= STALL_MS * 1000, t
    skipped = a.instance("stall")["ticks_skipped"]
    assert STALL_MS // PERIOD_MS - 2 <= skipped <= stalled_us // (PERIOD_MS * 1000) + 1, (skipped, stalled_us)
    text = a.ok("metrics", "--text", as_json=False)
    m = re.search(r'^organism_ticks_skipped_total\{instance="stall"\} (\d+)$', text, re.M)
    assert m and int(m.group(1)) == skipped, text


if __name__ == "__main__":
    run_tests(globals())
