package main

import (
	"io"
	"strings"
	"testing"
)

func TestEscapeReader(t *testing.T) {
	quit := 0
	e := &escapeReader{r: strings.NewReader("ab\x01\x01c\x01x rest"), quit: func() { quit++ }}
	got, err := io.ReadAll(e)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "ab\x01c" || quit != 1 {
		t.Fatalf("got %q quit=%d", got, quit)
	}
}
