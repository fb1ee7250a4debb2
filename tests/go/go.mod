module persona-lab/ollama-render

go 1.19
