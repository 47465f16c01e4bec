"""Runs images/build.py (standard library only, so it also runs before any virtualenv exists)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from controlplane.domain.naming import check_name
from controlplane.errors import InvalidInput, PermanentError


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

    def build(self, recipe: str, out_dir: Path) -> dict:
        recipe_dir = self.recipe_dir(recipe)
        script = self.images_dir / "build.py"
        done = subprocess.run(
            [sys.executable, str(script), str(recipe_dir), str(out_dir), "--cache", str(self.cache_dir / "debs")],
            capture_output=True, text=True, check=False,
        )
        if done.returncode != 0:
            raise PermanentError(f"image build {recipe} failed: {done.stderr.strip()[-2000:]}")
        return json.loads((out_dir / "manifest.json").read_text())
