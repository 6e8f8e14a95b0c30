"""The ``treeline`` command line: starts, drives and demonstrates the whole stack.

It sits at the top of the import graph: it may import every Treeline package, and no
package imports it, except tests.
"""
