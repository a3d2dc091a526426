"""Field types the request schemas share, so that what the OpenAPI document allows is
exactly what the server accepts (schemathesis checks both directions).

- `IntegralFloat`: JSON has one number type and JSON Schema's `integer` includes `3.0`,
  so an integral float is accepted as that integer; `3.5`, `"3"` and `true` are not.
  Put it *after* the bounds (`Annotated[int, Field(ge=1), IntegralFloat]`): a validator
  in front of them would hide the bounds from the JSON schema.
- `Text`: any string without NUL characters. Postgres cannot store U+0000 in `text`
  columns and would fail the insert with a 500 ("invalid byte sequence ... 0x00").
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field


def _integral_float_to_int(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


IntegralFloat = BeforeValidator(_integral_float_to_int)

NO_NUL_PATTERN = r"^[^\x00]*$"
Text = Annotated[str, Field(pattern=NO_NUL_PATTERN)]
