//! The process: builds the mesh, starts and stops threads.
