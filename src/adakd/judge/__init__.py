"""Pairwise LLM-as-judge over two runs' answers (docs/judge.md): prompts and the verdict parser, the
OpenAI-compatible client, the judgment cache, the swap rule and the bootstrap, the local vLLM launcher, the
tables. The command is `adakd-judge` (adakd.judge.cli)."""
