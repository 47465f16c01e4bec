"""Runs images/build.py (standard library only, so it also runs before any virtualenv exists).

Builds are reproducible, so a finished build is kept under CACHE_DIR/builds/<recipe>-<inputs>
and reused for a day: the inputs digest covers everything in this repository the image is made
from (the recipe, build.py, the in-guest agent and its protocol module). Package versions can
only move with the Debian archive; after a day the image is built again and, if nothing moved,
registers as the same version (same sha256).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from controlplane.domain.naming import check_name
from controlplane.errors import InvalidInput, PermanentError

REUSE_FOR_S = 24 * 3600
PROTOCOL = Path(__file__).resolve().parents[1] / "domain" / "guest_channel.py"


class ScriptImageBuilder:
    def __init__(self, *, images_dir: Path, cache_dir: Path) -> None:
        self.images_dir = images_dir
        self.cache_dir = cache_dir

    def recipe_dir(self, recipe: str) -> Path:
        try:
            check_name("recipe", recipe)
        except ValueError as err:
            raise InvalidInput(str(err), field="recipe") from err
        path = self.images_dir / "recipes" / recipe
        if not (path / "recipe.json").is_file():
            known = sorted(p.name for p in (self.images_dir / "recipes").glob("*/recipe.json"))
            raise InvalidInput(f"recipe: {recipe!r} not found; known: {', '.join(known) or 'none'}",
                               field="recipe")
        return path

    def inputs_digest(self, recipe_dir: Path) -> str:
        digest = hashlib.sha256()
        files = [self.images_dir / "build.py", PROTOCOL, *sorted((self.images_dir / "guest-agent").glob("*")),
                 *sorted(p for p in recipe_dir.rglob("*") if p.is_file())]
        for path in files:
            if path.is_file():
                where = path.relative_to(recipe_dir) if path.is_relative_to(recipe_dir) else Path(path.name)
                digest.update(str(where).encode() + b"\0" + path.read_bytes() + b"\0")
        return digest.hexdigest()[:24]

    def build(self, recipe: str, out_dir: Path) -> dict:
        recipe_dir = self.recipe_dir(recipe)
        kept = self.cache_dir / "builds" / f"{recipe}-{self.inputs_digest(recipe_dir)}"
        manifest = kept / "manifest.json"
        if manifest.is_file() and time.time() - manifest.stat().st_mtime < REUSE_FOR_S:
            shutil.copytree(kept, out_dir, dirs_exist_ok=True)
            return json.loads(manifest.read_text())
        built = self._run(recipe_dir, out_dir)
        self._keep(recipe, out_dir, kept)
        return built

    def _keep(self, recipe: str, out_dir: Path, kept: Path) -> None:
        """Keep this build (and only this one) of RECIPE for the next day's builds."""
        for old in kept.parent.glob(f"{recipe}-*"):
            if len(old.name) == len(kept.name):  # <recipe>-<24 hex>: not another recipe's
                shutil.rmtree(old, ignore_errors=True)
        staging = kept.with_name(f".{kept.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(out_dir, staging)
        staging.rename(kept)

    def _run(self, recipe_dir: Path, out_dir: Path) -> dict:
        recipe = recipe_dir.name
        script = self.images_dir / "build.py"
        done = subprocess.run(
            [sys.executable, str(script), str(recipe_dir), str(out_dir), "--cache", str(self.cache_dir / "debs")],
            capture_output=True, text=True, check=False,
        )
        if done.returncode != 0:
            raise PermanentError(f"image build {recipe} failed: {done.stderr.strip()[-2000:]}")
        return json.loads((out_dir / "manifest.json").read_text())
