"""The bundled data sets are the files their provenance table (microgpt/data/README.md) describes."""
import hashlib
import re

import pytest

from microgpt.datasets import BUNDLED, read_docs


def provenance_rows():
    readme = (BUNDLED["names"].rsplit("/", 1)[0] + "/README.md")
    with open(readme, encoding="utf-8") as f:
        return {m[1]: (int(m[2].replace(",", "")), m[3]) for m in
                re.finditer(r"^\| (\S+\.txt) \|.*?\| ([\d,]+) B \| ([0-9a-f]{64}) \|", f.read(), re.M)}


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_file_matches_its_provenance(name):
    path = BUNDLED[name]
    size, sha256 = provenance_rows()[path.rsplit("/", 1)[1]]
    with open(path, "rb") as f:
        content = f.read()
    assert len(content) == size and hashlib.sha256(content).hexdigest() == sha256


def test_names_has_32033_documents():
    assert len(read_docs("names")) == 32033
