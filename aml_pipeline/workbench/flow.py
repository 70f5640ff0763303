"""The money flow around an account, drawn as inline SVG on the server.

A pure function of the nodes and transfers :mod:`aml_pipeline.workbench.evidence` gathers
from the run's transactions: no JavaScript library, no request to anything, so
the picture is in the page an investigator saves or prints, and the same input always gives
the same bytes (the tests compare them).

Money runs left to right. The account sits in the middle column; a direct counterparty
that mostly paid the account stands to its left, one that was mostly paid by it to its
right; a second-hop counterparty stands beside the first-hop one it moved most money with.
Transfers between the same two accounts are drawn as one arrow labelled with their count,
total and times; transfers that raised an alert are drawn heavier and in the alert colour.
Only presentation attributes are used (no ``style=``), so the page's Content-Security-Policy
needs no ``unsafe-inline``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from html import escape

#: Geometry of the picture (SVG user units; the picture scales to its container's width).
WIDTH = 1240
COLUMNS = {-2: 66, -1: 343, 0: 620, 1: 897, 2: 1174}
NODE_W, NODE_H, ROW = 124, 30, 54
TOP = 36
#: The most accounts drawn per column; the others are counted in the caption.
MAX_PER_COLUMN = 12
#: Amounts and times are written on the largest flows and on every alerted one; the others
#: carry them in their tooltip, so a busy picture stays readable.
MAX_LABELS = 16
LABEL_CHARS = 16

ALERT_COLOUR, EDGE_COLOUR, CENTER_FILL, NODE_FILL = "#b42318", "#667085", "#fef0c7", "#f2f4f7"


@dataclass
class Flow:
    """Transfers from ``src`` to ``dst`` (one arrow)."""

    src: str
    dst: str
    count: int = 0
    total: float = 0.0
    first: datetime | None = None
    last: datetime | None = None
    alerted: bool = False
    event_ids: list[str] = field(default_factory=list)

    def add(self, edge: dict) -> None:
        self.count += 1
        self.total += float(edge.get("amount") or 0.0)
        t = edge.get("event_time")
        if t is not None:
            self.first = t if self.first is None or t < self.first else self.first
            self.last = t if self.last is None or t > self.last else self.last
        self.alerted = self.alerted or bool(edge.get("alerted"))
        if edge.get("event_id") is not None:
            self.event_ids.append(str(edge["event_id"]))


def aggregate(edges: list[dict]) -> list[Flow]:
    """One :class:`Flow` per (sender, receiver), largest total first (ties by accounts)."""
    flows: dict[tuple[str, str], Flow] = {}
    for e in edges:
        key = (str(e["src"]), str(e["dst"]))
        flows.setdefault(key, Flow(*key)).add(e)
    return sorted(flows.values(), key=lambda f: (-f.total, f.src, f.dst))


def amount_text(x: float) -> str:
    return f"{x:,.2f}"


def when_text(first: datetime | None, last: datetime | None) -> str:
    """``14 Mar 10:22``; a span on one day ``14 Mar 10:22-11:05``; over days ``14-16 Mar``."""
    if first is None:
        return ""
    if last is None or last == first:
        return first.strftime("%d %b %H:%M")
    if first.date() == last.date():
        return f"{first.strftime('%d %b %H:%M')}-{last.strftime('%H:%M')}"
    if (first.year, first.month) == (last.year, last.month):
        return f"{first.strftime('%d')}-{last.strftime('%d %b')}"
    return f"{first.strftime('%d %b')}-{last.strftime('%d %b')}"


def _sides(center: str, hops: dict[str, int], flows: list[Flow]) -> dict[str, int]:
    """Column of every drawn account: 0 the account, -1/+1 first hop, -2/+2 second hop."""
    into: dict[str, float] = defaultdict(float)
    out: dict[str, float] = defaultdict(float)
    for f in flows:
        if f.dst == center:
            into[f.src] += f.total
        if f.src == center:
            out[f.dst] += f.total
    side = {center: 0}
    for node, hop in hops.items():
        if hop == 1 and node != center:
            side[node] = -1 if into[node] > out[node] else 1
    # a second-hop account stands beside the first-hop account it moved most money with
    strongest: dict[str, tuple[float, str]] = {}
    for f in flows:
        for far, near in ((f.src, f.dst), (f.dst, f.src)):
            if hops.get(far) == 2 and side.get(near) in (-1, 1):
                best = strongest.get(far)
                if best is None or (f.total, near) > best:
                    strongest[far] = (f.total, near)
    for node, hop in hops.items():
        if hop == 2:
            near = strongest.get(node)
            side[node] = 2 * side[near[1]] if near else 2
    return side


def _order(side: dict[str, int], flows: list[Flow]) -> tuple[dict[int, list[str]], int]:
    """Accounts per column, heaviest first (second hop grouped under its first-hop account);
    and how many were left out by :data:`MAX_PER_COLUMN`."""
    weight: dict[str, float] = defaultdict(float)
    for f in flows:
        weight[f.src] += f.total
        weight[f.dst] += f.total
    columns: dict[int, list[str]] = defaultdict(list)
    for node, col in side.items():
        columns[col].append(node)
    hidden = 0
    rank: dict[str, int] = {}
    for col in (0, -1, 1, -2, 2):
        nodes = columns.get(col, [])
        if abs(col) == 2:
            parent: dict[str, int] = {}
            for f in flows:
                for far, near in ((f.src, f.dst), (f.dst, f.src)):
                    if far in nodes and near in rank and side.get(near) == col // 2:
                        parent[far] = min(parent.get(far, 10**9), rank[near])
            nodes.sort(key=lambda n: (parent.get(n, 10**9), -weight[n], n))
        else:
            nodes.sort(key=lambda n: (-weight[n], n))
        hidden += max(0, len(nodes) - MAX_PER_COLUMN)
        columns[col] = nodes[:MAX_PER_COLUMN]
        rank.update({n: i for i, n in enumerate(columns[col])})
    return columns, hidden


def _short(account: str) -> str:
    return account if len(account) <= LABEL_CHARS else account[: LABEL_CHARS - 1] + "\u2026"


def render_flow(center: str, nodes: list[dict], edges: list[dict], *, currency: str = "") -> str:
    """The SVG markup (a string, already escaped) of the money flow around ``center``.

    ``nodes``: ``{id, hop}`` (hop 0 is the account itself); ``edges``: ``{src, dst, amount,
    event_time, event_id, alerted}``. Edges between accounts not in ``nodes`` are ignored.
    """
    hops = {str(n["id"]): int(n.get("hop", 0)) for n in nodes if int(n.get("hop", 0)) <= 2}
    hops[str(center)] = 0
    flows = [f for f in aggregate(edges) if f.src in hops and f.dst in hops and f.src != f.dst]
    side = _sides(str(center), hops, flows)
    columns, hidden = _order(side, flows)
    rows = max((len(v) for v in columns.values()), default=1)
    height = TOP + rows * ROW + 30
    pos: dict[str, tuple[float, float]] = {}
    for col, members in columns.items():
        offset = TOP + (rows - len(members)) * ROW / 2
        for i, node in enumerate(members):
            pos[node] = (COLUMNS[col], offset + i * ROW + ROW / 2)
    drawn = [f for f in flows if f.src in pos and f.dst in pos]
    unit = f" {escape(currency)}" if currency else ""
    total_in = sum(f.total for f in drawn if f.dst == center)
    total_out = sum(f.total for f in drawn if f.src == center)
    title = f"Money flow around account {center}"
    desc = (f"{len(pos) - 1} counterparties up to {max(hops.values(), default=0)} hops, {len(drawn)} flows; "
            f"into the account {amount_text(total_in)}{unit}, out of it {amount_text(total_out)}{unit}"
            + (f"; {hidden} more accounts not drawn" if hidden else ""))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="flow" viewBox="0 0 {WIDTH} {height:.0f}" '
           f'width="100%" role="img" aria-labelledby="flow-title flow-desc" font-family="system-ui, sans-serif" '
           f'font-size="12">',
           f'<title id="flow-title">{escape(title)}</title><desc id="flow-desc">{escape(desc)}</desc>',
           '<defs>'
           f'<marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{EDGE_COLOUR}"/></marker>'
           f'<marker id="arrow-alert" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{ALERT_COLOUR}"/></marker>'
           '</defs>']
    for label, col in (("2nd hop in", -2), ("1st hop in", -1), ("account", 0), ("1st hop out", 1), ("2nd hop out", 2)):
        if columns.get(col):
            out.append(f'<text x="{COLUMNS[col]}" y="18" text-anchor="middle" fill="#475467" font-weight="600">{label}</text>')
    labelled = {id(f) for f in drawn[:MAX_LABELS]} | {id(f) for f in drawn if f.alerted}
    for f in drawn:
        out.append(_edge(f, pos, str(center), unit, id(f) in labelled))
    for node, (x, y) in pos.items():
        is_center = node == str(center)
        bold = ' font-weight="700"' if is_center else ""
        out.append(
            f'<g class="node{" center" if is_center else ""}"><title>{escape(node)} (hop {hops[node]})</title>'
            f'<rect x="{x - NODE_W / 2:.1f}" y="{y - NODE_H / 2:.1f}" width="{NODE_W}" height="{NODE_H}" rx="6" '
            f'fill="{CENTER_FILL if is_center else NODE_FILL}" stroke="{"#b54708" if is_center else "#98a2b3"}" '
            f'stroke-width="{2 if is_center else 1}"/>'
            f'<text x="{x:.1f}" y="{y + 4:.1f}" text-anchor="middle" fill="#101828"'
            f'{bold}>{escape(_short(node))}</text></g>')
    if hidden:
        out.append(f'<text x="{WIDTH / 2}" y="{height - 8:.0f}" text-anchor="middle" fill="#475467">'
                   f'{hidden} more accounts not drawn (the smallest flows)</text>')
    out.append("</svg>")
    return "".join(out)


def _edge(f: Flow, pos: dict[str, tuple[float, float]], center: str, unit: str, label: bool) -> str:
    (x1, y1), (x2, y2) = pos[f.src], pos[f.dst]
    half = NODE_W / 2
    if x2 > x1:  # forward: right side of the sender to the left side of the receiver
        sx, ex = x1 + half, x2 - half
        path = f"M{sx:.1f},{y1:.1f} L{ex:.1f},{y2:.1f}"
        # the label sits nearer the outer end, where the arrows fan out and labels have room
        t = 0.3 if abs(x1 - COLUMNS[0]) > abs(x2 - COLUMNS[0]) else 0.7
        lx, ly = sx + (ex - sx) * t, y1 + (y2 - y1) * t
    elif x2 < x1:  # backward (money flowing against the page): a curve below the straight line
        sx, ex = x1 - half, x2 + half
        cx, cy = (sx + ex) / 2, max(y1, y2) + 40
        path = f"M{sx:.1f},{y1 + 6:.1f} Q{cx:.1f},{cy:.1f} {ex:.1f},{y2 + 6:.1f}"
        lx, ly = cx, (y1 + y2) / 4 + cy / 2
    else:  # same column: a bow outwards
        sx = ex = x1 + (half if x1 >= COLUMNS[0] else -half)
        cx = sx + (60 if x1 >= COLUMNS[0] else -60)
        path = f"M{sx:.1f},{y1:.1f} Q{cx:.1f},{(y1 + y2) / 2:.1f} {ex:.1f},{y2:.1f}"
        lx, ly = (sx + cx) / 2, (y1 + y2) / 2
    colour = ALERT_COLOUR if f.alerted else EDGE_COLOUR
    backward = x2 < x1 or x2 == x1  # money flowing against the page: drawn dashed and lighter
    dash = ' stroke-dasharray="5 4" opacity="0.6"' if backward and not f.alerted else ""
    amount = (f"{f.count}\u00d7 " if f.count > 1 else "") + amount_text(f.total) + unit
    when = when_text(f.first, f.last)
    label_title = f"{f.src} \u2192 {f.dst}: {f.count} transfer(s), {amount_text(f.total)}{unit}, {when}" + (
        " (alerted)" if f.alerted else "")
    return (f'<g class="edge{" alerted" if f.alerted else ""}"><title>{escape(label_title)}</title>'
            f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="{2.5 if f.alerted else 1.3}"{dash} '
            f'marker-end="url(#{"arrow-alert" if f.alerted else "arrow"})"/>'
            + ("" if not label else
               f'<text x="{lx:.1f}" y="{ly - 3:.1f}" text-anchor="middle" fill="{colour}" font-weight="600" '
            f'paint-order="stroke" stroke="#ffffff" stroke-width="3">{escape(amount)}</text>'
            f'<text x="{lx:.1f}" y="{ly + 10:.1f}" text-anchor="middle" fill="#475467" font-size="11" '
            f'paint-order="stroke" stroke="#ffffff" stroke-width="3">{escape(when)}</text>') + '</g>')
