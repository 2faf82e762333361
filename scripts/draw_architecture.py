"""Draw docs/architecture.svg (the rooms and the way a request travels): python3 scripts/draw_architecture.py."""

from __future__ import annotations

from html import escape
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "docs" / "architecture.svg"
WIDTH, HEIGHT = 980, 640
ASKS = ("#fdf6e3", "#b58900")  # who asks
ROOM = ("#eef3fb", "#4a6fa5")  # rooms on the request's path
PROC = ("#eaf5ea", "#3d8b3d")  # processes
LIB = ("#f3eefb", "#6c4aa5")  # rooms used as libraries
BASE = ("#f7f7f7", "#888888")


class Drawing:
    def __init__(self) -> None:
        self.parts = [
            f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
            f'height="{HEIGHT}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="13">',
            '<defs><marker id="a" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
            'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#444"/></marker></defs>',
            f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
        ]

    def box(self, x: int, y: int, w: int, h: int, title: str, lines: list[str], colours: tuple[str, str]) -> None:
        fill, stroke = colours
        self.parts.append(
            f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="8" fill="{fill}" stroke="{stroke}" '
            'stroke-width="1.5"/>'
        )
        self.parts.append(f'<text x="{x + 10}" y="{y + 20}" font-weight="bold">{escape(title)}</text>')
        for i, line in enumerate(lines):
            self.text(x + 10, y + 38 + 16 * i, line, size=11.5, colour="#333")

    def text(self, x: float, y: float, text: str, size: float = 11, colour: str = "#555") -> None:
        self.parts.append(f'<text x="{x}" y="{y}" font-size="{size}" fill="{colour}">{escape(text)}</text>')

    def arrow(self, x1: int, y1: int, x2: int, y2: int, label: str = "", dx: int = 6, dy: int = -4) -> None:
        self.parts.append(
            f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="#444" stroke-width="1.4" marker-end="url(#a)"/>'
        )
        if label:
            self.text((x1 + x2) / 2 + dx, (y1 + y2) / 2 + dy, label)

    def svg(self) -> str:
        return "\n".join([*self.parts, "</svg>"]) + "\n"


def draw() -> str:
    d = Drawing()
    d.box(20, 20, 300, 60, "operator: sollol-ops CLI", ["up / down / status / stage / doctor / bench"], ASKS)
    d.box(360, 20, 300, 60, "API clients", ["ollama / openai clients, Open WebUI"], ASKS)
    units = ["roles/ -> units on every host:", "rpc-servers, coordinator, gateway"]
    d.box(700, 14, 260, 72, "ansible-playbook site.yml", units, ASKS)
    cli = ["one module per command", "options.py: shared option decorators", "context.py: the one inventory locator",
           "main.py: typed errors -> exit codes"]  # fmt: skip
    d.box(20, 120, 300, 110, "cli/", cli, ROOM)
    gateway = ["auth, bodies (limits), routing by model", "ollama/openai routes, listings, status",
               "upstream: relay, failover, no buffering", "ondemand: load, queue, keep_alive, swap"]  # fmt: skip
    d.box(360, 120, 300, 110, "gateway/", gateway, ROOM)
    serve = ["lifecycle: check, plan, up/down/status", "coordinator: one owner of state + process",
             "command (--rpc), server_http, server_log", "statefile: strict, atomic, private"]  # fmt: skip
    d.box(20, 280, 300, 110, "serve/", serve, ROOM)
    pool = ["Ollama or OpenAI nodes", "(inventory group ollama_nodes)", "least busy member, failover"]
    d.box(360, 280, 300, 110, "pool (gateway/pool.py)", pool, ROOM)
    server = ["persistent, --rpc host:port,...", "--device / --tensor-split"]
    d.box(20, 440, 300, 70, "llama-server (coordinator host)", server, PROC)
    d.box(360, 440, 300, 70, "Ollama / llama-server nodes", ["one model each, whole"], PROC)
    workers = ["layers of the sharded model live here; tensor cache (-c) filled by stage/"]
    d.box(20, 550, 640, 70, "rpc-servers (one unit per device, port locked to the coordinator)", workers, PROC)
    d.text(700, 108, "libraries used by the rooms on the left:")
    d.box(700, 120, 260, 105, "cluster/", ["inventory (+ YAML aliases), facts", "wire, rpc (probe), link",
                                          "placement, toolchain", "local, provision, doctor"], LIB)  # fmt: skip
    d.box(700, 240, 260, 70, "model/", ["ollama: the store on disk", "gguf_info: facts from the header"], LIB)
    d.box(700, 325, 260, 70, "stage/", ["each worker's share into its", "rpc-server cache; ledger, verify"], LIB)
    d.box(700, 410, 260, 70, "bench/", ["measured ratios to a baseline", "of the same run (make bench)"], LIB)
    d.box(700, 495, 260, 55, "dev/", ["demo store, synthetic models, netns"], LIB)
    d.box(700, 565, 260, 55, "errors, paths, procs, timings, ui", ["shared by every room"], BASE)
    d.arrow(170, 80, 170, 118)
    d.arrow(510, 80, 510, 118, "HTTP")
    d.arrow(170, 230, 170, 278, "up / down")
    d.arrow(440, 230, 300, 278, "sharded model", -70, 18)
    d.arrow(560, 230, 560, 278, "pool model")
    d.arrow(170, 390, 170, 438, "spawn, /health")
    d.arrow(510, 390, 510, 438, "relay")
    d.arrow(400, 230, 240, 438)
    d.text(250, 425, "requests to the coordinator")
    d.arrow(170, 510, 170, 548, "RPC (graph, tensors)")
    return d.svg()


if __name__ == "__main__":
    OUT.write_text(draw())
    print(OUT)
