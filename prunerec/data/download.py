"""Download the raw Amazon Reviews 2018 files of a category, resumably: bytes go to FILE.part,
which is renamed to FILE only once it is known complete (its length, or its gzip stream ends)."""
from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Sequence
from pathlib import Path

from prunerec.errors import PrunerecError

DEFAULT_BASE_URL = "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2"
DOWNLOAD_CHUNK = 1 << 16  # bytes per read; at most this much is lost when a connection breaks


def amazon_urls(category: str, base_url: str = DEFAULT_BASE_URL) -> tuple[str, str]:
    """(reviews URL, meta URL) of an Amazon 2018 category such as 'Video_Games'."""
    base = base_url.rstrip("/")
    return f"{base}/categoryFiles/{category}.json.gz", f"{base}/metaFiles2/meta_{category}.json.gz"


def download_amazon(category: str, out_dir, *, base_url: str = DEFAULT_BASE_URL, timeout: float = 30,
                    progress: bool = True) -> tuple[Path, Path]:
    """Fetch the reviews and meta files of a category into out_dir; resumes partial downloads.

    Returns (reviews path, meta path)."""
    if not isinstance(category, str) or not re.fullmatch(r"[A-Za-z0-9_]+", category):
        raise PrunerecError(f"category must look like 'Video_Games' (letters, digits, _), got {category!r}")
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PrunerecError(f"{out_dir}: cannot create the download folder ({err.strerror or err})") from None
    urls = amazon_urls(category, base_url)
    paths = []
    for url in urls:
        dest = out_dir / url.rsplit("/", 1)[1]
        _download(url, dest, timeout=timeout, progress=progress, all_urls=urls)
        paths.append(dest)
    return paths[0], paths[1]


def _unreachable(url: str, reason: str, all_urls: Sequence[str]) -> PrunerecError:
    listing = "\n".join(f"  {u}" for u in all_urls)
    return PrunerecError(
        f"could not reach {url} ({reason}). This machine may be offline or the address may be blocked.\n"
        f"Download the files by hand (on another machine if need be):\n{listing}\n"
        "and pass them to: prunerec data prepare amazon --reviews FILE --meta FILE")


def _download(url: str, dest: Path, *, timeout: float, progress: bool, all_urls: Sequence[str]) -> None:
    import requests
    import urllib3
    from tqdm.auto import tqdm

    if dest.is_file():
        return  # complete files are only ever renamed into place
    part = dest.with_name(dest.name + ".part")
    for _attempt in range(2):  # a second pass only after a server refused or ignored the range
        offset = part.stat().st_size if part.is_file() else 0
        headers = {"Accept-Encoding": "identity"}  # byte offsets must be those of the file itself
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            response = requests.get(url, headers=headers, stream=True, timeout=(timeout, timeout))
        except requests.RequestException as err:
            raise _unreachable(url, _reason(err), all_urls) from None
        with response:
            if response.status_code == 416 and offset:
                total = _content_range_total(response.headers.get("Content-Range", ""))
                if total == offset:  # the .part already holds the whole file
                    part.replace(dest)
                    return
                part.unlink()
                continue
            if response.status_code not in (200, 206):
                raise _unreachable(url, f"HTTP {response.status_code} {response.reason or ''}".strip(), all_urls)
            if response.status_code == 206 and offset:
                content_range = response.headers.get("Content-Range", "")
                if not content_range.startswith(f"bytes {offset}-"):
                    part.unlink()  # an unexpected range: start afresh
                    continue
                mode, start = "ab", offset
            else:
                mode, start = "wb", 0  # 200: the server sent everything, so restart
            length = response.headers.get("Content-Length")
            total = start + int(length) if length and length.isdigit() else None
            written = start
            try:
                with open(part, mode) as out, tqdm(total=total, initial=start, unit="B", unit_scale=True,
                                                   unit_divisor=1024, desc=f"downloading {dest.name}",
                                                   disable=not progress, leave=False) as bar:
                    for chunk in response.raw.stream(DOWNLOAD_CHUNK, decode_content=False):
                        out.write(chunk)
                        written += len(chunk)
                        bar.update(len(chunk))
            except (requests.RequestException, urllib3.exceptions.HTTPError) as err:
                raise PrunerecError(
                    f"download of {url} broke off after {written} bytes ({_reason(err)}); "
                    f"the partial file {part} is kept: run the command again to resume") from None
            except OSError as err:
                raise PrunerecError(f"{part}: cannot write the download ({err.strerror or err})") from None
        if total is not None and written != total:
            raise PrunerecError(
                f"download of {url} ended early ({written} of {total} bytes); "
                f"the partial file {part} is kept: run the command again to resume")
        if total is None and dest.name.endswith(".gz") and not gzip_complete(part):
            raise PrunerecError(
                f"download of {url} ended without the end of its gzip stream ({written} bytes, the server sent "
                f"no length): the partial file {part} is kept; run the command again to resume (delete it if "
                "this repeats)")
        part.replace(dest)
        return
    raise PrunerecError(f"could not resume {url}: the server rejected the byte range twice; delete {part} and retry")


def gzip_complete(path: Path) -> bool:
    """Whether `path` holds whole gzip members (a truncated download fails the check)."""
    try:
        with gzip.open(path, "rb") as stream:
            while stream.read(1 << 20):
                pass
    except (EOFError, OSError, zlib.error):
        return False
    return True


def _content_range_total(value: str) -> int | None:
    match = re.search(r"/(\d+)\s*$", value)
    return int(match.group(1)) if match else None


def _reason(err: Exception) -> str:
    import requests

    if isinstance(err, requests.Timeout):
        return "timed out"
    if isinstance(err, requests.ConnectionError):
        text = str(err)
        for hint, words in (("Name or service not known", "DNS lookup failed"),
                            ("nodename nor servname", "DNS lookup failed"),
                            ("Temporary failure in name resolution", "DNS lookup failed"),
                            ("Failed to resolve", "DNS lookup failed"),
                            ("Connection refused", "connection refused"),
                            ("Network is unreachable", "network unreachable")):
            if hint in text:
                return words
        return f"connection failed: {type(err).__name__}"
    return f"{type(err).__name__}: {err}"
