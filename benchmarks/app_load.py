"""K people using one `sae-explorer app` at once: feature pages, searches and live prompts from K concurrent sessions.

    .venv/bin/python benchmarks/app_load.py                       # runs/demo, K = 1, 4, 8, 12 actions per session
    .venv/bin/python benchmarks/app_load.py --run runs/suite-smollm2 --sessions 1,8 --actions 24

Each session is a Streamlit websocket client (the protocol the browser speaks: BackMsg / ForwardMsg protobufs on
`/_stcore/stream`), so K sessions cost the server what K browsers would and the client almost nothing; loopback only.
A session repeats: a feature deep link (a random live feature), a label search (a random word from a label), and
every third action a prompt of its own (new text, so the model runs: live jobs wait in the server's line). Latency is
from sending the rerun to the script's "finished" message, i.e. server time plus the transfer, without the browser's
drawing (benchmarks/browser_latency.py measures that). An error is an exception element, an error alert, a script
that did not finish, or no answer within the timeout. Each K starts a fresh server with the app's default limits.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import websockets  # noqa: E402
from streamlit.proto.BackMsg_pb2 import BackMsg  # noqa: E402
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg  # noqa: E402
from streamlit.proto.WidgetStates_pb2 import WidgetState  # noqa: E402

from sae_core.features.reader import FeatureStore  # noqa: E402
from sae_core.testing.app_server import running_app  # noqa: E402

WIDGETS = ("text_area", "text_input", "button", "radio", "multiselect", "slider", "checkbox", "selectbox")
ERROR = 1  # Alert.Format.ERROR


@dataclass
class Answer:
    seconds: float
    errors: list[str] = field(default_factory=list)
    widgets: dict[str, object] = field(default_factory=dict)  # label -> widget proto of the last run
    kinds: list[str] = field(default_factory=list)  # the element types drawn
    texts: list[str] = field(default_factory=list)  # markdown and captions drawn


class Session:
    """One browser tab's worth of protocol: a websocket that asks for script runs and reads their output."""

    def __init__(self, url: str, timeout_s: float):
        self.ws_url = url.replace("http://", "ws://") + "/_stcore/stream"
        self.origin = url
        self.timeout_s = timeout_s
        self.page_hash: dict[str, str] = {}

    async def __aenter__(self) -> Session:
        self.ws = await websockets.connect(self.ws_url, subprotocols=["streamlit"], max_size=None,
                                           origin=self.origin, open_timeout=30)
        return self

    async def __aexit__(self, *_) -> None:
        await self.ws.close()

    async def run(self, page: str, query: dict[str, str], widgets: list[WidgetState] | None = None) -> Answer:
        """Run `page` with URL `query` and widget states; wait for the script to finish."""
        state = BackMsg()
        client = state.rerun_script
        client.query_string = urlencode(query)
        client.page_name = page
        if page in self.page_hash:
            client.page_script_hash = self.page_hash[page]
        client.widget_states.widgets.extend(widgets or [])
        start = time.perf_counter()
        await self.ws.send(state.SerializeToString())
        answer = Answer(0.0)
        try:
            async with asyncio.timeout(self.timeout_s):
                while True:
                    msg = ForwardMsg()
                    msg.ParseFromString(await self.ws.recv())
                    kind = msg.WhichOneof("type")
                    if kind in ("new_session", "navigation"):  # every page's hash, to name the page in later reruns
                        self.page_hash.update({p.url_pathname or p.page_name: p.page_script_hash
                                               for p in getattr(msg, kind).app_pages})
                    elif kind == "delta" and msg.delta.WhichOneof("type") == "new_element":
                        self._read_element(msg.delta.new_element, answer)
                    elif kind == "script_finished":
                        if msg.script_finished == ForwardMsg.FINISHED_EARLY_FOR_RERUN:
                            continue  # the page reran itself (st.rerun): wait for that run
                        if msg.script_finished != ForwardMsg.FINISHED_SUCCESSFULLY:
                            answer.errors.append(f"script finished with status {msg.script_finished}")
                        break
        except TimeoutError:
            answer.errors.append(f"no answer within {self.timeout_s:.0f} s")
        answer.seconds = time.perf_counter() - start
        return answer

    @staticmethod
    def _read_element(element, answer: Answer) -> None:
        kind = element.WhichOneof("type")
        answer.kinds.append(kind)
        if kind == "markdown":
            answer.texts.append(element.markdown.body)
        if kind == "exception":
            answer.errors.append(f"exception: {element.exception.type}: {element.exception.message}"[:200])
        elif kind == "alert" and element.alert.format == ERROR:
            answer.errors.append(f"error: {element.alert.body}"[:200])
        elif kind in WIDGETS:
            widget = getattr(element, kind)
            answer.widgets[widget.label] = widget


def text_state(widget, value: str) -> WidgetState:
    return WidgetState(id=widget.id, string_value=value)


async def one_session(url: str, run_name: str, features, words: list[str], actions: int, seed: int,
                      timeout_s: float, out: dict[str, list], errors: list[str], think: float = 0.0,
                      prompt_every: int = 3) -> None:
    rng = random.Random(seed)
    async with Session(url, timeout_s) as session:
        listing = await session.run("Features", {"run": run_name})
        mode = WidgetState(id=listing.widgets["search"].id, string_value="label or explanation")
        listing = await session.run("Features", {"run": run_name}, [mode])  # the query box of that mode
        prompt_page = None
        for i in range(actions):
            await asyncio.sleep(rng.uniform(0, 2 * think))
            if prompt_every and i % prompt_every == prompt_every - 1:  # a prompt of its own: the model runs
                if prompt_page is None:
                    prompt_page = await session.run("Prompt", {"run": run_name})  # opens the page (default prompt)
                widgets = prompt_page.widgets
                text = f"Session {seed} asks, for the {i}th time, about {rng.choice(words)} and {rng.choice(words)}."
                answer = await session.run("Prompt", {"run": run_name}, [
                    text_state(widgets["prompt"], text),
                    WidgetState(id=widgets["show activations"].id, trigger_value=True)])
                kind = "live prompt"
                if "plotly_chart" not in answer.kinds and not answer.errors:
                    answer.errors.append("the prompt drew no heatmap")
            elif i % 3 == 0:
                sae, feature = rng.choice(features)
                answer = await session.run("Features", {"run": run_name, "sae": sae, "feature": str(feature)})
                kind = "feature page"
            else:
                answer = await session.run("Features", {"run": run_name},
                                           [mode, text_state(listing.widgets["query"], rng.choice(words))])
                kind = "label search"
                if not any("found" in t for t in answer.texts) and not answer.errors:
                    answer.errors.append("the search showed no result count")
            out.setdefault(kind, []).append(answer.seconds)
            errors.extend(f"{kind}: {e}" for e in answer.errors)


def sample(run: Path, n: int, seed: int) -> tuple[list[tuple[str, int]], list[str]]:
    """Live features to open and words from their labels to search for."""
    rng = random.Random(seed)
    with FeatureStore(run) as store:
        features, words = [], set()
        while len(features) < n:
            sae_id, feature = store.random_feature(rng=rng)
            page = store.feature(sae_id, feature)
            features.append((page.sae["short_name"], int(feature)))
            words |= {w.strip('"\'→ ') for w in str(page.feature["label"]).split() if len(w.strip('"\'→ ')) >= 4}
    return features, sorted(w for w in words if w.isalpha())[:200] or ["the"]


def cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) clock ticks of the whole machine since boot, from /proc/stat (None off Linux)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return None
    return sum(fields) - fields[3] - fields[4], sum(fields)  # idle and iowait are not busy


def busy_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> str:
    if before is None or after is None or after[1] == before[1]:
        return "?"
    return f"{100 * (after[0] - before[0]) / (after[1] - before[1]):.0f}%"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/demo", help="a precomputed run (default: runs/demo)")
    parser.add_argument("--sessions", default="1,4,8", help="K values, comma-separated (default: 1,4,8; at most 16)")
    parser.add_argument("--actions", type=int, default=12,
                        help="actions per session (a third are prompts); a smaller K runs its sessions in rounds until "
                             "it has done as many actions as the largest K, so K = 1 has as many samples as K = 8")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before an action counts as an error")
    parser.add_argument("--think", type=float, default=0.0,
                        help="mean seconds a person reads between actions (uniform 0..2×; default 0: back to back)")
    parser.add_argument("--prompt-every", type=int, default=3,
                        help="every Nth action is a new prompt (default 3; 0: browsing only, the model never runs)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    ks = [int(k) for k in args.sessions.split(",")]
    if max(ks) > 16:
        raise SystemExit("at most 16 sessions: this is a loopback load test, not a stress tool")
    run = Path(args.run)
    features, words = sample(run, 64, args.seed)
    rows = []
    for k in ks:
        with running_app(run) as url:
            asyncio.run(warm_up(url, run.name))  # model loaded, store open, as on a server that has been up a while
            out: dict[str, list[float]] = {}
            errors: list[str] = []
            start, ticks = time.perf_counter(), cpu_ticks()
            for round_ in range(max(ks) // k):  # as many actions at every K, each session as busy as at the largest
                asyncio.run(all_sessions(url, run.name, features, words, args, k, round_, out, errors))
            wall, busy = time.perf_counter() - start, busy_share(ticks, cpu_ticks())
        for kind, values in sorted(out.items()):
            rows.append((k, kind, len(values), statistics.median(values), pct(values, 0.95), max(values)))
        rows.append((k, "errors", len(errors), None, busy, wall))
        for e in errors[:5]:
            print(f"K={k}: {e}", file=sys.stderr)
    prompts = f"every {args.prompt_every} a new prompt" if args.prompt_every else "no prompts"
    print(f"\nrun {run}; {args.actions * max(ks)} actions at each K ({prompts}), think time "
          f"{args.think} s on average; the app's default limits; CPU: the whole machine's, all cores\n")
    print("| K | page | n | p50 s | p95 s | max s |\n|---:|---|---:|---:|---:|---:|")
    base = {kind: p95 for k, kind, _, p50, p95, _ in rows if k == ks[0] and p50 is not None}
    for k, kind, n, p50, p95, top in rows:
        if p50 is None:
            print(f"| {k} | **errors** (whole run {top:.0f} s, CPU {p95} busy) | {n} | | | |")
        else:
            ratio = f" ({p95 / base[kind]:.1f}× K={ks[0]})" if k != ks[0] and kind in base else ""
            print(f"| {k} | {kind} | {n} | {p50:.3f} | {p95:.3f}{ratio} | {top:.3f} |")


async def warm_up(url: str, run_name: str) -> None:
    async with Session(url, 300) as session:
        for page in ("Features", "Prompt"):
            answer = await session.run(page, {"run": run_name})
            if answer.errors:
                raise SystemExit(f"the {page} page failed while warming up: {answer.errors}")


async def all_sessions(url, run_name, features, words, args, k, round_, out, errors) -> None:
    await asyncio.gather(*(one_session(url, run_name, features, words, args.actions, args.seed * 100 + round_ * k + i,
                                       args.timeout,
                                       out, errors, args.think, args.prompt_every) for i in range(k)))


if __name__ == "__main__":
    main()
