// Package metrics holds the webhook's Prometheus metrics, in one place:
// their names, help texts, labels and the fixed sets the labels come from.
// docs/reference.md lists them. Callers record through methods of
// *Metrics, which do nothing on a nil receiver, so a component built
// without metrics needs no checks.
//
// Every label value comes from a fixed set whatever a request says: a kind
// or operation outside the known ones is counted as LabelOther, a
// decryption outcome is a decrypt.Reason's label, a key is a configured
// key's name, a lane a budget lane's. A series per distinct string a
// client sent would grow memory and scrapes without bound.
package metrics
