"""Hard limits on what one request may hand the registry, in one place (docs/operations.md, "Limits").

Every field, list and file has a bound, checked before the work it would cost: a request over a bound is
a clear 4xx and leaves nothing behind. Database columns are at least as wide as the bounds on what goes
into them. The limits on whole request bodies, connections and timeouts are the server's
(hub/settings.py); these are the domain's.
"""

from __future__ import annotations

# Adapter metadata (PATCH, upload fields, card metadata)
MAX_DESCRIPTION_CHARS = 10_000
MAX_TASK_CHARS = 255
MAX_TAGS = 32
MAX_TAG_CHARS = 64
MAX_LICENSE_CHARS = 64
MAX_BASE_MODEL_CHARS = 255
# What is embedded for text search: MiniLM reads 256 word pieces, so more text only costs time.
MAX_EMBEDDED_CHARS = 4_000

# Files of an upload
MAX_FILES = 64
MAX_CONFIG_BYTES = 1024 * 1024
MAX_CARD_BYTES = 1024 * 1024
MAX_EXAMPLES_BYTES = 4 * 1024 * 1024
MAX_EXAMPLES = 10_000
MAX_EXAMPLE_CHARS = 10_000
MAX_TEXT_BYTES = 64 * 1024 * 1024  # any other text file (tokenizer.json of a large vocabulary is ~20 MB)
MAX_HEADER_BYTES = 16 * 1024 * 1024  # a safetensors header
MAX_FRONT_MATTER_CHARS = 64 * 1024  # a card's YAML metadata
MAX_CARD_CHARS = 2000  # of a card, embedded for text search
MAX_JSON_DEPTH = 32  # configs, headers, example lines, commit lines: flat objects in practice

# The adapter itself
MAX_RANK = 4096
MAX_MODULES = 4096  # modules with factors in one adapter (a 70B model with every projection: 560)
MAX_MODULE_NAME_CHARS = 255
MAX_PATTERNS = 1024  # entries of target_modules, rank_pattern, alpha_pattern
MAX_PATTERN_CHARS = 1024
# (a regex match of a module name is cut off after registry.lora.algebra.REGEX_TIMEOUT_S)
MAX_LINEAGE = 256  # versions an adapter says it was derived from

# Finding adapters: a route request (hidden states) and the answers of routes, searches and lists
MAX_ROUTE_TOKENS = 8192  # token rows over all modules of one route request
MAX_ROUTE_MODULES = 1024  # modules one route request may hold hidden states for
MAX_TOP_K = 64
MAX_ROUTE_RESULTS = 100  # adapters one route or search answers with
MAX_PAGE = 200  # adapters a list page holds
MAX_EVENTS = 500  # audit events one request reads

# Identifiers from paths and query strings (database integers)
MAX_DB_ID = 2**31 - 1

# Accounts
MAX_TOKEN_DAYS = 3650  # how far ahead a token's expiry may be (ten years)
MAX_TOKENS_PER_USER = 100
MAX_SESSION_KEY_CHARS = 128  # a page session's cookie id is 43 characters; anything far longer is not ours
