"""Values that become text (captions, alternative captions, documents, prompts): type-checked, never
a Python repr. A string is kept; bytes are decoded as UTF-8 or refused; a list, a mapping, a
number or a boolean is refused with its type named. A caption with no visible character (only
spaces, control or format characters such as U+200B, combining marks) is `empty_caption`.
"""

from __future__ import annotations

import json
import unicodedata

from infra.uris import short

INVISIBLE = ("Z", "C", "M")  # separators, control/format/unassigned/private, lone combining marks
MAX_ALT_CAPTIONS = 64


class NotText(ValueError):
    """`reason`: the reject counter; the message says what the value was."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def _kind(value) -> str:
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        list: "a list",
        tuple: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def as_text(value, what: str = "caption", reason: str = "caption_not_text") -> str:
    """`value` as a str: a str as is, bytes decoded as UTF-8; anything else is NotText(`reason`)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            raise NotText(
                "unreadable_caption" if what == "caption" else reason,
                f"the {what} is not UTF-8 ({e.reason} at byte {e.start})",
            ) from None
    raise NotText(reason, f"the {what} is {_kind(value)}, not text: {short(value)}")


def visible(text: str) -> bool:
    """Whether `text` has a character a reader would see."""
    return any(unicodedata.category(c)[0] not in INVISIBLE for c in text)


def caption_text(value, max_chars: int) -> str:
    """A caption: whitespace runs made one space; raises NotText (`missing_caption`,
    `caption_not_text`, `unreadable_caption`, `empty_caption`, `caption_too_long`)."""
    if value is None:
        raise NotText("missing_caption", "")
    text = " ".join(as_text(value).split())
    if len(text) > max_chars:
        raise NotText("caption_too_long", f"{len(text)} > {max_chars} characters")
    if not visible(text):
        raise NotText("empty_caption", f"no visible character: {short(text)}")
    return text


def csv_list(cell):
    """A CSV cell meant to hold a list: its JSON array parsed (`["a cat", "a kitten"]`), an empty
    cell None; any other text is returned as it is, for `alt_captions` to refuse."""
    if not isinstance(cell, str):
        return cell
    if not cell.strip():
        return None
    try:
        return json.loads(cell)
    except (ValueError, RecursionError):
        return cell


def alt_captions(value, max_chars: int) -> list[str]:
    """The `alt_captions` of a record: a list of strings (Parquet, JSON; a CSV cell as a JSON array,
    see csv_list). Anything else is NotText(`bad_alt_captions`): a plain string is never taken for
    a list of its characters. Captions without a visible character are dropped."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or not all(isinstance(a, str) for a in value):
        raise NotText(
            "bad_alt_captions",
            f"alt_captions must be a list of strings (in a CSV cell: a JSON array), got {_kind(value)}: {short(value)}",
        )
    if len(value) > MAX_ALT_CAPTIONS:
        raise NotText("bad_alt_captions", f"{len(value)} alt_captions > {MAX_ALT_CAPTIONS}")
    out = [" ".join(a.split()) for a in value]
    if any(len(a) > max_chars for a in out):
        raise NotText("bad_alt_captions", f"an alt caption longer than {max_chars} characters")
    return [a for a in out if visible(a)]
