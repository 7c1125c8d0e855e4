"""`AutoBool`: a recipe value that is "auto" (read it from the model) or a real boolean.

pydantic's Literal["auto", True, False] alone would take 1 and 0 for true and false; a
quoted or numeric flag is a mistake worth an error, as everywhere in the recipe.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError


def _auto_or_bool(value: Any) -> Any:
    """`value` when it is "auto", true or false; the recipe's literal error otherwise."""
    if value == "auto" or type(value) is bool:
        return value
    raise PydanticCustomError(
        "literal_error", "Input should be {expected}", {"expected": "'auto', true or false"}
    )


AutoBool = Annotated[Literal["auto", True, False], BeforeValidator(_auto_or_bool)]
