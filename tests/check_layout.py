#!/usr/bin/env python3
"""Checks the rule "who may use whom" (docs/architecture.md §1) over the
includes of every source file, so that the layout does not drift:

  - a file may include headers of its own folder and of the folders its
    folder may use (ALLOWED below), nothing else of the project;
  - a folder's internal headers (*_int.h, and protocol/wire.h) are included
    only from that folder;
  - the rooms below gateway/ see only config.h and metrics.h of gateway/'s
    top level.

The build enforces most of it too (each room's library links only what it may
use), but a header that happens to be on an include path would slip through
there.  Exit status 1 with one line per violation.  Run from anywhere:
    python3 tests/check_layout.py
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# folder -> folders whose headers it may include (its own is implied).
ALLOWED = {
    "common": [],
    "protocol": [],
    "db": ["common"],
    "gateway/api": [],
    "gateway/upstream": ["common", "protocol"],
    "gateway/lan": ["common", "protocol", "db", "gateway"],
    "gateway/provision": ["common", "protocol", "db", "gateway", "gateway/upstream"],
    "gateway/relay": ["common", "db", "gateway", "gateway/lan", "gateway/upstream",
                      "gateway/provision"],
    "gateway": ["common", "protocol", "db", "gateway/api", "gateway/lan", "gateway/upstream",
                "gateway/provision", "gateway/relay", "web"],
    "web": ["common", "gateway/api"],
}
# What the rooms below gateway/ may include of gateway/'s top level.
GATEWAY_SHARED = {"config.h", "metrics.h"}
# The only file of gateway/'s top level that may include web/: main.c, and
# only web.h (the composition root starts the web server).
WEB_PUBLIC = {"web.h"}
INTERNAL = re.compile(r"(_int\.h|^wire\.h)$")
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def folder_of(path):
    return os.path.dirname(os.path.relpath(path, ROOT))


def headers():
    """Every project header by base name -> its folder (names are unique)."""
    out = {}
    for folder in ALLOWED:
        d = os.path.join(ROOT, folder)
        for name in os.listdir(d):
            if name.endswith(".h"):
                if name in out:
                    sys.exit(f"check_layout: header name {name} in both {out[name]} and {folder}")
                out[name] = folder
    return out


def main():
    hdrs = headers()
    bad = []
    for folder in ALLOWED:
        d = os.path.join(ROOT, folder)
        for name in sorted(os.listdir(d)):
            if not name.endswith((".c", ".h")):
                continue
            path = os.path.join(d, name)
            rel = os.path.relpath(path, ROOT)
            with open(path, encoding="utf-8") as f:
                text = f.read()
            for inc in INCLUDE.findall(text):
                base = os.path.basename(inc)
                target = hdrs.get(base)
                if inc.startswith("api/"):
                    target = "gateway/api"
                if target is None:
                    bad.append(f"{rel}: includes \"{inc}\", which is no header of the project")
                    continue
                if target == folder:
                    continue
                if INTERNAL.search(base):
                    bad.append(f"{rel}: includes {target}/{base}, internal to {target}/")
                    continue
                if target not in ALLOWED[folder]:
                    bad.append(f"{rel}: {folder}/ may not include {target}/{base}")
                    continue
                if target == "gateway" and folder.startswith("gateway/") and \
                        base not in GATEWAY_SHARED:
                    bad.append(f"{rel}: {folder}/ may include only {sorted(GATEWAY_SHARED)} "
                               f"of gateway/, not {base}")
                if target == "web" and (rel != "gateway/main.c" or base not in WEB_PUBLIC):
                    bad.append(f"{rel}: only gateway/main.c may include web/web.h")
    for line in bad:
        print(line)
    if bad:
        print(f"check_layout: {len(bad)} include(s) cross a forbidden boundary "
              "(docs/architecture.md §1)")
        return 1
    print("check_layout: every include respects the layout")
    return 0


if __name__ == "__main__":
    sys.exit(main())
