"""Small pieces every layer uses: atomic files, device choice, the allocator setting. Imports nothing of ours."""
