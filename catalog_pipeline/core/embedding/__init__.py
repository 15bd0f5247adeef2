"""Item embeddings: what text of an item is embedded (`document`), the small `Embedder`
interface with its offline lexical default (`hashing`) and an OpenAI-compatible client
(`openai`), and exact nearest-neighbour search over vectors (`search`).

An embedder is identified by its key (`name@dimension`, e.g. `hashing-v1@256`); it is
stored with every vector, so vectors of two models never mix and switching model or
dimension embeds again.
"""
