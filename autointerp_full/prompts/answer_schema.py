"""Answer schemas: a prompt's JSON Schema template made concrete for one request."""

from __future__ import annotations

from typing import Any


def render_schema(template: Any, n: int) -> Any:
    """A schema template made concrete for `n` items:

    - the string "{n}" becomes the integer n (e.g. `minItems: "{n}"`);
    - a property named "{i}" stands for properties "1" .. "n" in order, each with its schema,
      and "{i}" in a `required` list for all of them;
    - an integer with both `minimum` and `maximum` (at most 101 values) becomes an `enum` of
      them, which every constrained decoder supports (llama.cpp's converter ignores bounds)."""
    if isinstance(template, list):
        out_list: list[Any] = []
        for item in template:
            if item == "{i}":
                out_list += [str(i) for i in range(1, n + 1)]
            else:
                out_list.append(render_schema(item, n))
        return out_list
    if isinstance(template, str):
        return n if template == "{n}" else template
    if not isinstance(template, dict):
        return template
    out: dict[str, Any] = {}
    for key, value in template.items():
        if key == "properties" and isinstance(value, dict):
            props: dict[str, Any] = {}
            for name, sub in value.items():
                names = [str(i) for i in range(1, n + 1)] if name == "{i}" else [name]
                for each in names:
                    props[each] = render_schema(sub, n)
            out[key] = props
        else:
            out[key] = render_schema(value, n)
    low, high = out.get("minimum"), out.get("maximum")
    if out.get("type") == "integer" and isinstance(low, int) and isinstance(high, int):
        if 0 <= high - low <= 100:
            del out["minimum"], out["maximum"]
            out["enum"] = list(range(low, high + 1))
    return out
