"""The run directory: one folder per stage, each written atomically with a provenance record.

A stage is skipped when its folder holds ``_provenance.json`` whose ``inputs_hash`` equals the
hash of the stage's current inputs (config section, upstream artifacts, model and data hashes).
Work that must survive a kill (generation progress, training checkpoints) lives under
``.work/<stage>/<inputs hash>/`` and is reused by the next attempt with the same inputs.
"""

from __future__ import annotations

import platform
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from . import __version__
from .distributed import is_main_process, launched, world_size
from .errors import UserError
from .io import atomic_dir, read_json, sha256_json, write_json
from .progress import say

PROVENANCE = "_provenance.json"


class RunDir:
    """Folder layout, skip/redo logic and provenance for one run."""

    def __init__(self, root: Path, force: set[str] | None = None):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise UserError("run_dir is an existing file, not a directory; point run_dir at a folder", str(self.root))
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a parent is a file, no permission, read-only disk...
            raise UserError(f"cannot create the run directory ({e.strerror or e})", str(self.root)) from None
        self.force = set(force or ())

    def path(self, stage: str) -> Path:
        return self.root / stage

    def work(self, stage: str, inputs_hash: str) -> Path:
        """A persistent scratch folder for a stage's resumable progress."""
        p = self.root / ".work" / stage.replace("/", "-") / inputs_hash[:16]
        p.mkdir(parents=True, exist_ok=True)
        return p

    def provenance(self, stage: str) -> dict | None:
        f = self.path(stage) / PROVENANCE
        if not f.is_file():
            return None
        try:
            return read_json(f)
        except Exception:
            return None

    def done_hash(self, stage: str) -> str | None:
        prov = self.provenance(stage)
        return prov.get("inputs_hash") if prov else None

    def run(
        self,
        stage: str,
        inputs: dict,
        build: Callable[[Path | None, Path], dict | None],
        all_ranks: bool = False,
        force_name: str | None = None,
    ) -> str:
        """Run ``build(tmp_dir, work_dir)`` unless the stage is done with the same inputs.

        ``build`` writes its artifacts into ``tmp_dir`` (renamed onto the stage folder on
        success) and may keep resumable progress in ``work_dir``. Returns the inputs hash,
        which downstream stages include in their own inputs.

        Under a multi-process launch (:mod:`potstill.distributed`) only ``all_ranks`` stages run
        (training: every rank runs ``build``, the non-main ranks with ``tmp_dir=None``, and only the
        main process writes the stage folder and its provenance); any other stage must be up to date.
        ``force_name``: the name ``--force`` uses for this folder (``train`` for ``students/kd``).
        """
        inputs_hash = sha256_json(inputs)
        forced = stage in self.force or stage.split("/")[0] in self.force or force_name in self.force
        if not forced and self.done_hash(stage) == inputs_hash:
            if is_main_process():
                say(f"[green]✓[/] {stage}: up to date, skipped")
            return inputs_hash
        if launched():
            if not all_ranks:
                raise UserError(
                    f"stage '{stage}' is not up to date; a multi-process launch (WORLD_SIZE="
                    f"{world_size()}) only trains: run the earlier stages in one process first "
                    "(potstill prompts / generate / capture CONFIG)"
                )
            if not is_main_process():  # a helper rank: trains with the others, writes nothing here
                build(None, self.work(stage, inputs_hash))
                return inputs_hash
        say(f"[cyan]▶[/] {stage}")
        work = self.work(stage, inputs_hash)
        started = time.time()
        with atomic_dir(self.path(stage)) as tmp:
            extra = build(tmp, work) or {}
            write_json(
                tmp / PROVENANCE,
                {
                    "stage": stage,
                    "inputs_hash": inputs_hash,
                    "inputs": inputs,
                    "outputs": extra,
                    "potstill_version": __version__,
                    "python": platform.python_version(),
                    "host": platform.node(),
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
                    "duration_s": round(time.time() - started, 3),
                },
            )
        shutil.rmtree(work, ignore_errors=True)
        say(f"[green]✓[/] {stage}: done in {time.time() - started:.1f}s")
        return inputs_hash
