// Package nodestore is the node identity table: it maps FUSE nodeids to
// host files (mount, st_ino, file handle, parent and name) and back, keeps
// it in a state directory so nodeids survive daemon restarts, bounds its
// memory by a setting, and seals every record with a MAC.
package nodestore
