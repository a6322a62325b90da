// render.go: renders an Ollama Modelfile TEMPLATE the way Ollama's template.Execute does for
// a template that uses .Messages (Ollama's ChatHandler and template.collate, stdlib only).
//
// Usage: go run render.go TEMPLATE_FILE < request.json, where request.json is
// {"System": "<the Modelfile SYSTEM or empty>", "Think": null, true or false,
// "Messages": [{"Role": "...", "Content": "...", "Thinking": "..."}]}.
package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Message struct{ Role, Content, Thinking string }

type Request struct {
	System   string
	Think    *bool
	Messages []Message
}

func main() {
	src, err := os.ReadFile(os.Args[1])
	check(err)
	var req Request
	check(json.NewDecoder(os.Stdin).Decode(&req))
	msgs := req.Messages
	// ChatHandler: the Modelfile SYSTEM goes first unless the request starts with a system message.
	if req.System != "" && (len(msgs) == 0 || msgs[0].Role != "system") {
		msgs = append([]Message{{Role: "system", Content: req.System}}, msgs...)
	}
	// collate: .System joins the system messages; consecutive same-role messages merge.
	var system []string
	var collated []*Message
	for i := range msgs {
		if msgs[i].Role == "system" {
			system = append(system, msgs[i].Content)
		}
		if n := len(collated); n > 0 && collated[n-1].Role == msgs[i].Role && msgs[i].Role != "tool" {
			collated[n-1].Content += "\n\n" + msgs[i].Content
		} else {
			collated = append(collated, &msgs[i])
		}
	}
	// Ollama's funcs (json, currentDate, ...) are not used by ferrotune's templates.
	tmpl, err := template.New("").Option("missingkey=zero").Parse(string(src))
	check(err)
	check(tmpl.Execute(os.Stdout, map[string]any{
		"System":     strings.Join(system, "\n\n"),
		"Messages":   collated,
		"Response":   "",
		"Think":      req.Think != nil && *req.Think,
		"IsThinkSet": req.Think != nil,
	}))
}

func check(err error) {
	if err != nil {
		os.Stderr.WriteString(err.Error() + "\n")
		os.Exit(1)
	}
}
