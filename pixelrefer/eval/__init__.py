"""Research mode: the paper's benchmarks run (`eval run`) and scored (`eval score`) with the official prompts."""
