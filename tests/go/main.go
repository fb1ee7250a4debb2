// Render an Ollama Modelfile TEMPLATE with Go's own text/template, the way Ollama does.
//
// Input (JSON on stdin): {"template": "...", "system": "<Modelfile SYSTEM or empty>",
// "messages": [{"role": "...", "content": "..."}, ...]}. Output: the prompt text on stdout.
//
// Three steps, each a copy of what Ollama's server does with a /api/chat request (ollama/ollama,
// server/routes.go ChatHandler and template/template.go):
//  1. the Modelfile's SYSTEM is put in front as a system message when the request's first
//     message is not a system message;
//  2. messages are collated: consecutive messages of one role are joined with a blank line,
//     and the system messages are also joined into .System;
//  3. the template, parsed with Option("missingkey=zero") and Ollama's "json" function, is
//     executed over {System, Messages, Tools, Response: "", ...} (templates that use
//     .Messages get the whole chat at once).
//
// tests/test_export.py compares this output with the tokenizer's chat template and with the
// template embedded in the GGUF file.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role      string `json:"role"`
	Content   string `json:"content"`
	Thinking  string `json:"thinking,omitempty"`
	Images    []string
	ToolCalls []any
	ToolName  string
}

type Input struct {
	Template string    `json:"template"`
	System   string    `json:"system"`
	Messages []Message `json:"messages"`
}

func collate(msgs []Message) (string, []*Message) {
	var system []string
	var collated []*Message
	for i := range msgs {
		if msgs[i].Role == "system" {
			system = append(system, msgs[i].Content)
		}
		if len(collated) > 0 && collated[len(collated)-1].Role == msgs[i].Role && msgs[i].Role != "tool" {
			collated[len(collated)-1].Content += "\n\n" + msgs[i].Content
		} else {
			collated = append(collated, &msgs[i])
		}
	}
	return strings.Join(system, "\n\n"), collated
}

func main() {
	var in Input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		fmt.Fprintln(os.Stderr, "reading the JSON input:", err)
		os.Exit(2)
	}
	msgs := in.Messages
	if len(msgs) > 0 && msgs[0].Role != "system" && in.System != "" {
		msgs = append([]Message{{Role: "system", Content: in.System}}, msgs...)
	}
	funcs := template.FuncMap{"json": func(v any) string { b, _ := json.Marshal(v); return string(b) }}
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(in.Template)
	if err != nil {
		fmt.Fprintln(os.Stderr, "parsing the TEMPLATE:", err)
		os.Exit(3)
	}
	system, collated := collate(msgs)
	err = tmpl.Execute(os.Stdout, map[string]any{
		"System": system, "Messages": collated, "Tools": nil, "Response": "", "Think": false, "IsThinkSet": false,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "executing the TEMPLATE:", err)
		os.Exit(4)
	}
}
