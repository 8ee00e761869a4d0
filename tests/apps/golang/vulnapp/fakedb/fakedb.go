// Package fakedb is a tiny database/sql driver for the test app: it answers every query with
// one row echoing the SQL text, so the app exercises database/sql's real QueryContext /
// ExecContext paths (the ones the Go probe hooks) without a database engine or a module
// download at set-up. It is part of the victim app, not of the probe.
package fakedb

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"io"
)

func init() { sql.Register("fakedb", Driver{}) }

type Driver struct{}

func (Driver) Open(name string) (driver.Conn, error) { return &conn{}, nil }

type conn struct{}

func (c *conn) Prepare(query string) (driver.Stmt, error) { return &stmt{query: query}, nil }
func (c *conn) Close() error                              { return nil }
func (c *conn) Begin() (driver.Tx, error)                 { return tx{}, nil }

// QueryContext and ExecContext let database/sql skip Prepare, as real drivers do.
func (c *conn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	return &rows{value: query}, nil
}

func (c *conn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	return driver.RowsAffected(1), nil
}

type tx struct{}

func (tx) Commit() error   { return nil }
func (tx) Rollback() error { return nil }

type stmt struct{ query string }

func (s *stmt) Close() error                                    { return nil }
func (s *stmt) NumInput() int                                   { return -1 }
func (s *stmt) Exec(args []driver.Value) (driver.Result, error) { return driver.RowsAffected(1), nil }
func (s *stmt) Query(args []driver.Value) (driver.Rows, error)  { return &rows{value: s.query}, nil }

type rows struct {
	value string
	done  bool
}

func (r *rows) Columns() []string { return []string{"echo"} }
func (r *rows) Close() error      { return nil }
func (r *rows) Next(dest []driver.Value) error {
	if r.done {
		return io.EOF
	}
	r.done = true
	dest[0] = r.value
	return nil
}
