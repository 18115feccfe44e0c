"""Parquet files as the Hugging Face hub serves them (``data/<split>-00000-of-00001.parquet``).

Image columns are structs {bytes: binary, path: string}; the schema metadata carries the
``huggingface`` features description the datasets library writes. Written with fixed options and no
pandas metadata, so equal inputs give byte-identical files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

Feature = Literal["string", "int32", "image"]


def write_parquet(path: Path, columns: dict[str, list[Any]], features: dict[str, Feature]) -> Path:
    """Write one table; `features` gives each column's type in datasets' terms (order = column order)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    arrow_type = {"string": pa.string(), "int32": pa.int32(), "image": image_type}
    hf_feature = {"string": {"dtype": "string", "_type": "Value"}, "int32": {"dtype": "int32", "_type": "Value"},
                  "image": {"_type": "Image"}}
    lengths = {len(v) for v in columns.values()}
    if len(lengths) != 1 or set(columns) != set(features):
        raise ValueError(f"{path}: columns {sorted(columns)} (lengths {sorted(lengths)}) do not match features {list(features)}")
    fields = [pa.field(name, arrow_type[kind]) for name, kind in features.items()]
    meta = {"info": {"features": {name: hf_feature[kind] for name, kind in features.items()}}}
    schema = pa.schema(fields, metadata={b"huggingface": json.dumps(meta, sort_keys=True).encode()})
    table = pa.table({name: pa.array(columns[name], type=arrow_type[kind]) for name, kind in features.items()}, schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="snappy", row_group_size=1000, write_statistics=False)
    return path
