#!/usr/bin/env python3
"""`make lint`'s document checks; exits 1 naming each problem.

1. References stay inside the repository and resolve: every `*.md` a tracked file names
   (a Markdown link, or a path such as docs/JOBS.md in a comment) exists in the repo, and no
   file points outside it (`../` above the root, absolute paths, the design folder that is
   not part of the repo).
2. Every variable is documented: each environment variable the container reads (src/), the
   Worker declares (edge-shim/src/env.ts) and the TypeScript client reads (clients/, when
   present) has a row in docs/SECRETS_TO_SET.md; each container variable is also in
   .env.example (set or commented out).
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Generated or third-party text whose references are not ours.
SKIP = re.compile(
    r"(^|/)(node_modules|target|\.git)/|package-lock\.json$|(^|/)openapi\.json$"
    r"|^edge-shim/src/generated/|worker-configuration\.d\.ts$|^clients/ts/src/generated/"
)
TEXT = re.compile(r"\.(md|rs|ts|mjs|js|cjs|json|jsonc|toml|ya?ml|sh|sql|py|example)$|(^|/)(Makefile|Dockerfile|run)$")

MD_LINK = re.compile(r"\]\(([^)\s]+)\)")
MD_PATH = re.compile(r"(?<![\w/.-])((?:\.\.?/)*(?:[\w.-]+/)*[\w.-]+\.md)\b")
OUTSIDE = [
    (re.compile(r"shared/design|shared TOOLING|/work/"), "points at the design folder outside the repo"),
]


def tracked_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout.split("\n")
    return sorted(f for f in listed if f and not SKIP.search(f) and (ROOT / f).is_file())


def check_references(files: list[str]) -> list[str]:
    problems = []
    names = {pathlib.PurePosixPath(f).name for f in files}
    for file in files:
        if not TEXT.search(file):
            continue
        text = (ROOT / file).read_text(encoding="utf-8", errors="replace")
        base = (ROOT / file).parent
        for number, line in enumerate(text.splitlines(), 1):
            for pattern, why in OUTSIDE:
                if pattern.search(line) and file != ".ci/check-docs.py":
                    problems.append(f"{file}:{number}: {why}: {line.strip()[:120]}")
            targets = []
            if file.endswith(".md"):
                targets += [t for t in MD_LINK.findall(line) if not re.match(r"^[a-z][a-z0-9+.-]*:|^#", t)]
            targets += MD_PATH.findall(line)
            for target in targets:
                path = target.split("#", 1)[0]
                if not path:
                    continue
                if path.startswith("/"):
                    problems.append(f"{file}:{number}: absolute path {target}")
                    continue
                resolved = [(base / path).resolve(), (ROOT / path).resolve()]
                inside = [r for r in resolved if r == ROOT or ROOT in r.parents]
                if not inside:
                    problems.append(f"{file}:{number}: {target} leaves the repository")
                elif any(r.exists() for r in inside):
                    continue
                elif "/" not in path and path in names:
                    continue  # a bare file name that exists somewhere in the repo
                else:
                    problems.append(f"{file}:{number}: {target} does not exist in the repository")
    return problems


# In src/config/: any reader method called with a variable name (`self.parsed("PORT", …)`,
# and whatever reader a later change adds).
CONTAINER_READ = re.compile(r"\.\w+\(\s*\"([A-Z][A-Z0-9_]+)\"")
ENV_VAR = re.compile(r"env::var(?:_os)?\(\s*\"([A-Z][A-Z0-9_]+)\"")
CLAP_ENV = re.compile(r"\benv\s*=\s*\"([A-Z][A-Z0-9_]+)\"")
TS_ENV = re.compile(r"process\.env\.([A-Z][A-Z0-9_]+)|process\.env\[\"([A-Z][A-Z0-9_]+)\"\]")


def variables() -> dict[str, tuple[str, str]]:
    """name -> (who reads it, where)."""
    found: dict[str, tuple[str, str]] = {}
    for path in sorted((ROOT / "src").rglob("*.rs")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("src/sim/"):
            continue  # simulators configure themselves by argument, not environment
        text = path.read_text(encoding="utf-8")
        text = text.split("#[cfg(test)]", 1)[0]
        patterns = (CONTAINER_READ, ENV_VAR, CLAP_ENV) if rel.startswith("src/config/") else (ENV_VAR, CLAP_ENV)
        for pattern in patterns:
            for match in pattern.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                found.setdefault(match.group(1), ("container", f"{rel}:{line}"))
    env_ts = ROOT / "edge-shim/src/env.ts"
    if env_ts.exists():
        text = env_ts.read_text(encoding="utf-8")
        body = text.split("export interface Env {", 1)[1].split("\n}", 1)[0]
        for match in re.finditer(r"^\s+([A-Z][A-Z0-9_]+)\s*:", body, re.M):
            kind = body[match.end():].split(";", 1)[0].strip()
            if kind in ("Hyperdrive", "Queue", "R2Bucket"):
                continue  # bindings, not variables
            line = text.count("\n", 0, text.index(body) + match.start()) + 1
            found.setdefault(match.group(1), ("Worker", f"edge-shim/src/env.ts:{line}"))
    for path in sorted((ROOT / "clients").rglob("*.ts")) if (ROOT / "clients").exists() else []:
        rel = path.relative_to(ROOT).as_posix()
        if SKIP.search(rel) or "/test" in rel:
            continue
        text = path.read_text(encoding="utf-8")
        for match in TS_ENV.finditer(text):
            name = match.group(1) or match.group(2)
            line = text.count("\n", 0, match.start()) + 1
            found.setdefault(name, ("TypeScript client", f"{rel}:{line}"))
    return found


def check_variables() -> list[str]:
    secrets = (ROOT / "docs/SECRETS_TO_SET.md").read_text(encoding="utf-8")
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", secrets))
    in_example = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", example, re.M))
    problems = []
    for name, (who, where) in sorted(variables().items()):
        if name not in documented:
            problems.append(f"{name} ({who}, read at {where}) has no row in docs/SECRETS_TO_SET.md")
        if who == "container" and name not in in_example:
            problems.append(f"{name} ({who}, read at {where}) is missing from .env.example")
    return problems


def main() -> int:
    files = tracked_files()
    problems = check_references(files) + check_variables()
    for problem in problems:
        print(problem, file=sys.stderr)
    count = len(variables())
    if problems:
        print(f"check-docs: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"check-docs: {len(files)} files' references resolve inside the repo; {count} variables documented")
    return 0


if __name__ == "__main__":
    sys.exit(main())
