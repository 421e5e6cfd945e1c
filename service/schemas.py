"""Request and response schemas (pydantic); the OpenAPI document is generated from these.

Limits shown here are the hard ceilings; a deployment's own (lower) limits from the settings are
written into ``/openapi.json`` when the app is created (``service.main``).
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from service.core.config import HARD_MAX_OFFSET, HARD_MAX_QUERY_CHARS, HARD_MAX_TOP_K

Word = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Factor = Annotated[float, Field(ge=0.0, le=100.0, allow_inf_nan=False)]
QueryText = Annotated[str, StringConstraints(min_length=1, max_length=HARD_MAX_QUERY_CHARS)]
ImageId = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
Mode = Literal["model", "table", "words"]
SearchMode = Literal["model", "table", "words", "image"]


class _Request(BaseModel):
    # a misspelt field is an error, not ignored; no silent coercion (false is not 0, "5" not 5)
    model_config = ConfigDict(extra="forbid", strict=True)


class _QueryFields(_Request):
    query: QueryText = Field(
        description="Query text; '+word' tokens require words, '-word' tokens exclude them"
    )
    mode: Mode = Field(
        "model",
        description="'model': LexVLA text encoder; 'table': the checkpoint's query table (no "
        "language model; 422 if it has none); 'words': the query's own words",
    )
    require: list[Word] = Field(
        [], max_length=64, description="Filter: only images that have all these words"
    )
    exclude: list[Word] = Field(
        [],
        max_length=64,
        description="Filter: no image that has any of these words (also removed from the query)",
    )
    boost: dict[Word, Factor] = Field(
        {},
        max_length=64,
        description="Word -> factor on its query weight (added if absent; 0 ignores the word)",
    )

    @field_validator("query")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the query is empty (only whitespace)")
        return value


class _Arrangement(_Request):
    where: dict[str, Any] | None = Field(
        None,
        description="Metadata conditions, all ANDed (and with the word filters): a value "
        "(equality; a list field contains it), {'in': [...]}, {'gte'|'gt'|'lte'|'lt': ...} for "
        "numbers and ISO 8601 datetimes, {'near': {'lat', 'lon', 'km'}} for geo points",
        examples=[{"album": "Trip", "taken_at": {"gte": "2020-01-01"}}],
    )
    sort: str = Field(
        "relevance",
        min_length=1,
        max_length=70,
        description="'relevance', a field ('taken_at': oldest first) or '-field' (newest first); "
        "applied to every image that passes where, the word filters and min_score",
    )
    facets: list[Annotated[str, StringConstraints(min_length=1, max_length=70)]] = Field(
        [],
        max_length=16,
        description="Keyword fields (and 'taken_at:year' / 'taken_at:month') to count over every "
        "image that passes, not just the page",
    )


class SearchRequest(_Arrangement, _QueryFields):
    top_k: int = Field(10, ge=1, le=HARD_MAX_TOP_K, description="Hits per page")
    offset: int = Field(0, ge=0, le=HARD_MAX_OFFSET, description="Hits skipped (paging)")
    min_score: float = Field(0.0, ge=0.0, allow_inf_nan=False, description="Score floor")
    matched_limit: int | None = Field(
        20, ge=0, le=100_000, description="Matched words listed per hit (null: all)"
    )
    query_words_limit: int | None = Field(
        100, ge=0, le=100_000, description="Query words listed, heaviest first (null: all)"
    )
    bind: bool = Field(
        False,
        description="Re-rank the top LEXVLA_BIND_CANDIDATES hits by where their words are: the "
        "mean of the lexical score and the best single patch's score (all the query's words at "
        "one place), so 'a red circle' ranks a red circle above a red heart beside a circle; one "
        "image-encoder pass per candidate not in the patch cache",
    )


class ExplainRequest(_QueryFields):
    image_id: ImageId
    top_words: int = Field(30, ge=1, le=500, description="Top words listed for image and query")
    heatmaps: int = Field(8, ge=0, le=64, description="Matched words that get a heat map")


class EncodeRequest(_Request):
    text: QueryText
    mode: Mode = "model"

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the text is empty (only whitespace)")
        return value


class ReloadRequest(_Request):
    version: str | None = Field(
        None,
        pattern=r"^v\d{4,}$",
        description="Version every process serves from now on (pinned, also for workers that "
        "restart, until a reload without a version); default: follow what CURRENT names",
    )


# --- responses ----------------------------------------------------------------------------------
class WordWeight(BaseModel):
    word: str
    weight: float


class MatchedWord(BaseModel):
    word: str
    query_weight: float
    image_weight: float
    contribution: float = Field(description="query_weight * image_weight")


class SearchHit(BaseModel):
    rank: int = Field(description="1-based position in the whole result list")
    id: str
    score: float = Field(description="Sum of all matched words' contributions")
    image_url: str
    thumbnail_url: str
    matched: list[MatchedWord] = Field(description="Largest contributions first")
    other_matched_words: int = Field(0, description="Matched words not listed (matched_limit)")
    other_contribution: float = Field(0.0, description="Their summed contribution")
    bound_score: float | None = Field(
        default=None, description="bind: the best patch's score for the whole query (else null)"
    )
    bound_patch: list[int] | None = Field(
        default=None, description="bind: that patch's [row, column] in the image's patch grid"
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description="The image's metadata record (capture time, album, tags, collection, ...); "
        "empty when the server has no corpus store",
    )


class SearchTimings(BaseModel):
    encode_ms: float
    search_ms: float
    rescore_ms: float
    total_ms: float


class AppliedFilters(BaseModel):
    require: list[str] = Field([], description="Only images that have all these words")
    exclude: list[str] = Field([], description="No image that has any of these words")
    rule: str = Field(
        "", description="When an image has a word (the same rule in every index engine)"
    )


class SearchResponse(BaseModel):
    query: str
    mode: SearchMode
    query_words: list[WordWeight] = Field(
        description="The query vector's active words, heaviest first (query_words_limit)"
    )
    active_words: int = Field(description="Number of active words in the query vector")
    excluded: list[str]
    filters: AppliedFilters = Field(description="The word filters this search applied")
    index_version: str
    top_k: int
    offset: int
    hits: list[SearchHit]
    timings: SearchTimings
    notes: list[str] = []
    facets: dict[str, dict[str, int]] = Field(
        default_factory=dict,
        description="Facet -> value -> images that pass with that value (largest first)",
    )
    matches: int | None = Field(
        None, description="Images that pass (counted when sorting by a field or with facets)"
    )


class FieldInfo(BaseModel):
    type: str = Field(description="keyword, keywords, integer, float, datetime or geo")
    source: str = Field(description="file, exif, collection, declared or inferred")


class FieldsResponse(BaseModel):
    index_version: str
    fields: dict[str, FieldInfo] = Field(
        description="The metadata fields of the served index: what where, sort and facets take"
    )


class HeatMap(BaseModel):
    word: str
    contribution: float
    min: float = Field(description="Smallest patch score of the word")
    max: float = Field(description="Largest patch score of the word")
    values: list[list[float]] = Field(description="grid_size x grid_size patch scores, row-major")
    url: str = Field(description="PNG of the map drawn over the image")


class ExplainTimings(BaseModel):
    encode_ms: float
    explain_ms: float
    patches_ms: float
    total_ms: float


class ExplainResponse(BaseModel):
    image_id: str
    query: str
    mode: Mode
    score: float = Field(description="Sum of the contributions in 'matched'")
    matched: list[MatchedWord]
    image_words: list[WordWeight]
    query_words: list[WordWeight]
    grid_size: int
    heatmaps: list[HeatMap]
    patches_from: Literal["original", "thumbnail"] | None
    image_url: str
    thumbnail_url: str
    index_version: str
    timings: ExplainTimings
    notes: list[str] = []
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="The image's metadata record (as on a search hit)"
    )


class EncodeResponse(BaseModel):
    text: str
    mode: Mode
    vector: dict[str, float] = Field(description="Active word -> weight, heaviest first")
    active_words: int


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    pid: int = Field(default_factory=os.getpid, description="the server process that answered")


class ProcessInfo(BaseModel):
    pid: int = Field(description="a server process (worker)")
    index_version: str | None = Field(description="the index version it serves")
    since: str = Field(description="when it started serving that version (UTC)")
    error: str | None = Field(None, description="the last version it could not open, and why")


class Readiness(BaseModel):
    ready: bool
    model: bool
    index: bool
    warmup: bool
    index_version: str | None = Field(None, description="the version this process serves")
    images: int | None = None
    detail: str = ""
    index_error: str | None = Field(
        None, description="a version this process could not open (the old one still serves)"
    )
    processes: list[ProcessInfo] = Field(
        default_factory=list, description="every process of this server and what it serves"
    )


class ReloadResponse(BaseModel):
    previous: str
    current: str
    engine: str
    images: int
    processes: list[ProcessInfo] = Field(description="every process, each serving ``current``")


class Written(BaseModel):
    id: str | None = Field(description="The image's id (null when the upload was skipped)")
    status: str = Field(description="'indexed' or 'skipped'")
    reason: str | None = Field(None, description="Why it was skipped (one line)")


class WriteResponse(BaseModel):
    images: list[Written]
    index_version: str | None = Field(description="The version that holds the change")


class MetadataPatch(_Request):
    metadata: dict[str, Any] = Field(
        description="Fields to set (a null value removes the field); other fields are kept"
    )
